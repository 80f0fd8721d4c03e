"""The reference bank-core simulator: implements cardlink.bank.v1.BankCore.

`python -m clients.banksim` serves it (``CARDLINK_BANKSIM_LISTEN``, default
127.0.0.1:7003) with the test cardholders of ``cardholders.py`` and a
simulator-only control service (``SimulatorControl``) that switches
behaviour per call kind and reads the one-time codes a real bank would have
texted. A bank can point its own adapter tests at the same contract.
"""
