"""The partner-facing gateway: card bindings, credit lines, the bank-core connector.

Layers (docs/ARCHITECTURE.md): ``servicers`` convert protos <-> the domain
types in ``models``; the domain services (``binding``, ``credit``,
``bank_events``) are plain async Python over Redis scripts (``store``) and
two ports (``ports``: the vault and the bank core), and never import grpc.
"""
