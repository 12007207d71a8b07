"""``python -m reward_forcing.train``: the train command (:mod:`reward_forcing.train.run`)."""

import sys

from .run import main

sys.exit(main())
