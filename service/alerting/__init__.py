"""Alertmanager's webhook: validated payloads, an idempotency ledger, and the actions."""
