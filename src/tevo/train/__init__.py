"""tevo.train"""
