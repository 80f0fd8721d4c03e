"""`make demo`: a platform user binds a card with a one-time code and activates credit.

Runs against `make run` (vault, bank simulator, gateway on their default
addresses, or CARDLINK_{VAULT,BANKSIM,GATEWAY}_TARGET), as the dev partner
``demo-partner`` of tenant ``demo``, through the partner SDK. It uses the
simulator's test cardholder Alice (4111 1111 1111 1111) and reads the code
the bank "texted" through the simulator's control service. Running it again
finds the bindings and the credit line it made the first time.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cardlink.bank.v1 import simulator_pb2, simulator_pb2_grpc
from cardlink.gateway.v1 import resources_pb2
from cardlink.vault.v1 import vault_pb2, vault_pb2_grpc
from clients.sdk import AlreadyExists, CardLinkError, PartnerClient, RetryPolicy, consent
from clients.sealing import KeySetError, SealingKeyCache, load_pins
from common.config import Env
from common.devstack import dev_token, state_dir

TENANT, USER, REFUSED_USER = "demo", "demo-user", "demo-user-2"
PARTNER_SCOPES = ("gateway.bindings.read", "gateway.bindings.write", "gateway.credit.read",
                  "gateway.credit.write")
ALICE = vault_pb2.CardSecret(pan="4111111111111111", expiry_month=12, expiry_year=2031,
                             holder_name="Alice Approved", national_id="ID-ALICE-0001",
                             phone="+15550100001")
BOB = vault_pb2.CardSecret(pan="5555555555554444", expiry_month=12, expiry_year=2031,
                           holder_name="Bob Blocked", national_id="ID-BOB-0002",
                           phone="+15550100002")


def step(title: str, detail: Any = "") -> None:
    print(f"\n== {title}", flush=True)
    if detail != "":
        print(f"   {detail}", flush=True)


def pins() -> dict[str, Ed25519PublicKey]:
    """The vault's key-set verification keys, as a partner gets them out of band:
    `make run` publishes them in the state folder."""
    path = state_dir(os.environ) / "vault-pins.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: start the stack with `make run` first")
    return load_pins(path)


def money(m: resources_pb2.Money) -> str:
    return f"{m.currency_code} {m.units_minor // 100}.{m.units_minor % 100:02d}"


def describe(binding: resources_pb2.Binding) -> str:
    state = resources_pb2.Binding.State.Name(binding.state)
    card = binding.card
    return (f"{binding.name}\n   state={state} card={card.bin}******{card.last_four} "
            f"holder={card.masked_holder_name} phone={card.masked_phone}"
            + (f" failure={binding.failure_reason}" if binding.failure_reason else ""))


async def run() -> None:
    env = Env()
    vault_target = env.text("CARDLINK_VAULT_TARGET", "127.0.0.1:7001")
    gateway_target = env.text("CARDLINK_GATEWAY_TARGET", "127.0.0.1:7002")
    banksim_target = env.text("CARDLINK_BANKSIM_TARGET", "127.0.0.1:7003")
    options = [("grpc.enable_http_proxy", 0)]
    async with grpc.aio.insecure_channel(vault_target, options=options) as vault_channel, \
            grpc.aio.insecure_channel(gateway_target, options=options) as gateway_channel, \
            grpc.aio.insecure_channel(banksim_target, options=options) as banksim_channel:
        vault = vault_pb2_grpc.TokenVaultStub(vault_channel)
        cache = SealingKeyCache(lambda: vault.GetSealingKeySet(
            vault_pb2.GetSealingKeySetRequest(), timeout=5), pins())
        step("1. The partner verified the vault's signed sealing keys",
             f"current key: {(await cache.current()).key_id}")

        def token() -> str:
            return dev_token("demo-partner", TENANT, PARTNER_SCOPES, audience="cardlink-gateway")

        sdk = PartnerClient(gateway_channel, TENANT, token, cache, RetryPolicy(attempts=3))
        control = simulator_pb2_grpc.SimulatorControlStub(banksim_channel)
        terms = consent("bnpl-terms", "2026-01", "web")

        step("2. Bind Alice's card (sealed on the partner side; the gateway never sees it)")
        binding = await sdk.create_binding(USER, ALICE, terms)
        print(f"   {describe(binding)}")
        if binding.state == resources_pb2.Binding.STATE_PENDING_CODE:
            reply = await control.GetLastCode(simulator_pb2.GetLastCodeRequest(phone=ALICE.phone))
            step("3. The bank texted a one-time code; the user types it in",
                 f"code {reply.code} (read from the simulator, never logged by the gateway)")
            binding = await sdk.confirm_binding(binding.name, reply.code)
            print(f"   {describe(binding)}")
        else:
            step("3. Already bound on an earlier run", describe(binding))

        step("4. Activate a credit line on the binding (the bank decides)")
        try:
            line = await sdk.activate_credit_line(USER, binding.name)
        except AlreadyExists as exists:
            line = await sdk.get_credit_line(exists.metadata["credit_line"])
        state = resources_pb2.CreditLine.State.Name(line.state)
        print(f"   {line.name}\n   state={state} tier={line.tier} limit={money(line.limit)} "
              f"available={money(line.available)} held={money(line.held)} "
              f"outstanding={money(line.outstanding)}")

        step("5. A card the bank refuses (Bob's, blocked)")
        # Shown again, not tried again, on a later run: each try counts against
        # the card's binding attempts (CARDLINK_GATEWAY_MAX_CARD_ATTEMPTS a day).
        earlier = [b async for b in sdk.list_bindings(REFUSED_USER)]
        declined = earlier[0] if earlier else await sdk.create_binding(REFUSED_USER, BOB, terms)
        print(f"   {describe(declined)}")
        print("\nDemo done.")


def main() -> int:
    try:
        asyncio.run(run())
    except CardLinkError as error:
        print(f"demo failed: {type(error).__name__} {error.reason}: {error.message}",
              file=sys.stderr)
        return 1
    except (grpc.aio.AioRpcError, subprocess.CalledProcessError, OSError) as error:
        print(f"demo failed: is `make run` up? ({error})", file=sys.stderr)
        return 1
    except KeySetError as error:
        print(f"demo failed: {error}. The pins in the state folder (vault-pins.json) are "
              "written when `make run` starts: after retiring the vault's signing key, "
              "restart it.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
