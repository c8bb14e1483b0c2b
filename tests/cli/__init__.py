"""Tests of wecompany.cli."""
