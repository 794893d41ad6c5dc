"""Moving a domain: the stream format shared by save files and migration, and
writing or reading a whole domain through it."""
