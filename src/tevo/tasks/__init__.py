"""tevo.tasks"""
