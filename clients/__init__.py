"""Clients of CardLink: the partner sealing helper and SDK, the bank-side client,
the bank-core simulator and the security team's key tool."""
