"""The pure core of wsmanager: model, ownership rules, framing and errors. No I/O here."""
