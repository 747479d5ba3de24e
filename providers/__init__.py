"""The providers of the three stages (STT, LLM, TTS), one module per provider family.

`base` defines what a provider of each stage offers, `errors` the failures they raise and what the client is told
of them, `tts` what our Pipecat TTS services share. Nothing here knows the pipeline or the registry:
`service_providers.py` picks the configured providers, `pipeline_stages.py` runs them in a session's pipeline.
"""
