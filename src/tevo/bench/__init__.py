"""tevo.bench"""
