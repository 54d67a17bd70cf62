"""tevo.peft"""
