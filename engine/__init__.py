"""The VQGAN-CLIP method as a library, plus the engine process that serves it.

Importing this package must stay cheap and torch-free: the bot imports `engine.protocol`,
`engine.registry` and `engine.download`, and must never pull torch into its process.
"""

__version__ = "0.1.0"
