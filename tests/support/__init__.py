"""Helpers the tests share: servers started the way users start them, SDK clients that validate every event,
control of the loopback fakes, fixtures' audio, and what the pure session core is built with."""
