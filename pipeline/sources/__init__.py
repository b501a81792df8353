"""Where messages come from: a mailbox file (mbox, as Google Takeout exports it) or Gmail."""
