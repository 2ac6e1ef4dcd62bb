"""The data layer: sources (kind:name[:options]) -> documents -> tokens, split by document
and cached (docs/design.md §8). Imports only torch and numpy beside the standard library.
"""
