"""Composition of the pipeline: CLI, configuration, embedded broker, process supervision.

The only package that imports the stages; it wires them and owns nothing of their behaviour.
"""
