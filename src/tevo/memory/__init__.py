"""tevo.memory"""
