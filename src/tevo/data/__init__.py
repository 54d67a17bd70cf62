"""tevo.data"""
