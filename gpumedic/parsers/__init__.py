"""Pure parsers: tool output text in, domain telemetry out.

Every parser raises `ParseError` (with a message fit for an operator) when the text is
an error message, garbage, truncated or empty. They never return "healthy-looking"
defaults for input they did not understand.
"""

from gpumedic.parsers.errors import ParseError

__all__ = ["ParseError"]
