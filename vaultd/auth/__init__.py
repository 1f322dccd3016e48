"""Auth methods: logical backends whose login returns an :class:`~vaultd.logical.Auth`.

They get a storage view and never import the core (DESIGN.md §7): the core
turns the ``Auth`` a login returns into a token.
"""
