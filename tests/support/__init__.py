"""Test helpers shared by every suite: identities, a real vault on loopback, test cards."""
