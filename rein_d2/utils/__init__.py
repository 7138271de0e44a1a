"""Small helpers shared by the library, the demo and the tools (files, videos)."""
