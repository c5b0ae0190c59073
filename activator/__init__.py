"""The activator: holds requests for revisions without ready pods and load-balances to pods."""
