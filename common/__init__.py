"""Pieces every CardLink process shares: errors, config, clock, auth, servers, Redis."""
