"""Never imported by the tests: importing it at all would be code from an artifact."""

import os
from pathlib import Path

Path(os.environ["NONSTOP_TEST_TRIPWIRE"]).write_text("imported")
