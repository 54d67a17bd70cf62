"""tevo.analysis"""
