"""Decentralized strategies: no server; every node trains from its own parameters and combines with its neighbours'."""
