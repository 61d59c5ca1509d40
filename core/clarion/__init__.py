"""Clarion's shared core: settings, logging, database, streams, Telegram client, metrics, CRD models.

Every component (operator, webhook, bot, senders) imports this package; nothing here runs at import.
"""

__version__ = "0.1.0"
