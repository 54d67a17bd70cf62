"""tevo.interop"""
