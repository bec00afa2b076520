"""Domain types: titles, users, events and how events become preference signals."""
