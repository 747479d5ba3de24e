"""The Realtime API's wire formats, both dialects: strict models of the client events (`models`), parsing into
the commands of `protocol.py` (`parsing`), pydantic errors as OpenAI's error codes (`errors`), the checks that make a
client item or response canonical (`canonical`), and the translation between the GA and beta shapes (`beta`)."""
