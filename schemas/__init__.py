"""Shared contracts of the pipeline: the KubeVirt JSON types, the raw events, the merged record, topics.

Every stage imports this package and nothing of another stage.
"""
