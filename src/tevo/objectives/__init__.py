"""tevo.objectives"""
