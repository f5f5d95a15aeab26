"""Trainer bases every method extends: ``ClipTrainer`` (:mod:`.clip`) and ``AdversarialClipTrainer`` (:mod:`.adversarial`)."""
