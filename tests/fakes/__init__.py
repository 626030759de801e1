"""Test doubles that keep real contracts: servers on 127.0.0.1 that validate what they receive."""
