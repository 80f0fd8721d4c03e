"""Settings and wiring of the simulator (`python -m clients.banksim` and tests).

| variable | default | meaning |
| --- | --- | --- |
| CARDLINK_BANKSIM_LISTEN | 127.0.0.1:7003 | where the simulator serves |
| CARDLINK_VAULT_TARGET | 127.0.0.1:7001 | the vault it detokenizes at |
| CARDLINK_TRUST_FILE | $CARDLINK_STATE_DIR/trust.json | issuers it trusts (the gateway) |
| CARDLINK_BANK_AUDIENCE | cardlink-bank | `aud` the gateway's tokens must carry |
| CARDLINK_JWT_ISSUER | cardlink-bank | issuer of its own tokens to the vault |
| CARDLINK_JWT_KEY_FILE | $CARDLINK_STATE_DIR/jwt/cardlink-bank.pem | their signing key |
| CARDLINK_JWT_KEY_ID | RFC 7638 thumbprint | their `kid` |
| CARDLINK_VAULT_AUDIENCE | cardlink-vault | `aud` of its tokens to the vault |
| CARDLINK_BANKSIM_CODE_TTL_S | 300 | how long a one-time code is accepted |
| CARDLINK_BANKSIM_TIMEOUT_HOLD_S | 30 | how long MODE_TIMEOUT holds an answer without a deadline |

SimulatorControl needs no credential: the simulator is a test double and
must never face the internet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from cardlink.bank.v1 import bank_core_pb2_grpc, simulator_pb2_grpc
from clients.bank import BankVaultClient
from clients.banksim.behavior import Switches
from clients.banksim.control import SimulatorControlServicer
from clients.banksim.core import BankCoreServicer, Books
from common.auth import (
    AuthGuard,
    JwtVerifier,
    TokenMinter,
    TrustStore,
    jwk_thumbprint,
    load_private_key_pem,
)
from common.clock import Clock, SystemClock
from common.config import Env, default_state_dir
from common.grpc_errors import error_guard
from common.server import RunningServer, Service, start_server
from common.tls import VAULT_CLIENT_TLS, ClientTls, open_channel

CORE = "/cardlink.bank.v1.BankCore/"
CONTROL = "/cardlink.bank.v1.SimulatorControl/"
BANK_SCOPE = "bank.core"
METHOD_SCOPES: dict[str, str | None] = {
    **{CORE + m: BANK_SCOPE for m in (
        "VerifyHolder", "CheckCode", "DecideCredit", "ChangeLimit", "SetFrozen", "Debit",
        "GetDebitStatus", "ReverseDebit", "ConfirmSettlement", "GetStatement")},
    **{CONTROL + m: None for m in ("SetBehavior", "ResetBehaviors", "GetLastCode", "GetStats")},
}


@dataclass(frozen=True)
class BanksimConfig:
    listen: str
    vault_target: str
    trust_file: Path
    audience: str
    jwt_issuer: str
    jwt_key_file: Path
    jwt_key_id: str | None
    vault_audience: str
    vault_tls: ClientTls | None = None
    code_ttl_s: float = 300.0
    timeout_hold_s: float = 30.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BanksimConfig:
        env = Env(environ)
        state = env.path("CARDLINK_STATE_DIR", default_state_dir())
        issuer = env.text("CARDLINK_JWT_ISSUER", "cardlink-bank")
        return cls(
            listen=env.text("CARDLINK_BANKSIM_LISTEN", "127.0.0.1:7003"),
            vault_target=env.text("CARDLINK_VAULT_TARGET", "127.0.0.1:7001"),
            trust_file=env.path("CARDLINK_TRUST_FILE", state / "trust.json"),
            audience=env.text("CARDLINK_BANK_AUDIENCE", "cardlink-bank"),
            jwt_issuer=issuer,
            jwt_key_file=env.path("CARDLINK_JWT_KEY_FILE", state / "jwt" / f"{issuer}.pem"),
            jwt_key_id=env.optional("CARDLINK_JWT_KEY_ID"),
            vault_audience=env.text("CARDLINK_VAULT_AUDIENCE", "cardlink-vault"),
            vault_tls=ClientTls.from_env(env, VAULT_CLIENT_TLS),
            code_ttl_s=env.number("CARDLINK_BANKSIM_CODE_TTL_S", 300.0),
            timeout_hold_s=env.number("CARDLINK_BANKSIM_TIMEOUT_HOLD_S", 30.0),
            log_level=env.text("CARDLINK_LOG_LEVEL", "INFO"),
        )


@dataclass(frozen=True)
class RunningBanksim:
    running: RunningServer
    channel: grpc.aio.Channel
    books: Books
    switches: Switches

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace: float | None = 0.5) -> None:
        await self.running.stop(grace)
        await self.channel.close(None)


async def start_banksim(config: BanksimConfig, clock: Clock | None = None) -> RunningBanksim:
    clock = clock or SystemClock()
    key = load_private_key_pem(config.jwt_key_file)
    minter = TokenMinter(key, config.jwt_key_id or jwk_thumbprint(key), config.jwt_issuer,
                         config.vault_audience, clock)
    vault = open_channel(config.vault_target, config.vault_tls,
                         options=[("grpc.enable_http_proxy", 0)])
    switches, books = Switches(), Books()
    core = BankCoreServicer(
        BankVaultClient(vault, minter), switches, books, clock, config.code_ttl_s,
        config.timeout_hold_s,
    )
    verifier = JwtVerifier(TrustStore(config.trust_file, clock), config.audience, clock)
    running = await start_server(
        [
            Service("cardlink.bank.v1.BankCore", bank_core_pb2_grpc.add_BankCoreServicer_to_server,
                    core),
            Service("cardlink.bank.v1.SimulatorControl",
                    simulator_pb2_grpc.add_SimulatorControlServicer_to_server,
                    SimulatorControlServicer(switches, books)),
        ],
        config.listen,
        guards=[error_guard, AuthGuard(verifier, METHOD_SCOPES)],
    )
    return RunningBanksim(running, vault, books, switches)
