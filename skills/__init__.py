"""Skill library and curiosity-driven skill discovery.

The import API (``from skills import SkillLibrary``) must only need torch, numpy and safetensors.
"""
