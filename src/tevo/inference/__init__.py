"""tevo.inference"""
