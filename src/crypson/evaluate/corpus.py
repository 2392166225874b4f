"""A fixed corpus of messages for the end-to-end character error rate (written for this project).

Letters, digits and spaces only: what EMNIST's balanced split can carry (case folds where the
split merges letter forms, see cipher/alphabet.py). Fixed, so that error rates of different runs
compare like with like; about 1,000 characters, so one run scores it in a second.
"""

MESSAGES: tuple[str, ...] = (
    "MEET ME AT THE OLD BRIDGE AT 7",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "PACK MY BOX WITH FIVE DOZEN LIQUOR JUGS",
    "Sphinx of black quartz judge my vow",
    "the launch code is 4096 not 2048",
    "Room 314 on floor 15",
    "WALTZ BAD NYMPH FOR QUICK JIGS VEX",
    "Call me back before 9 tonight",
    "ORDER 250 UNITS OF PART 8813",
    "the garden gate is open",
    "Key rotation every 30 days",
    "Delivery window 06 to 18",
    "HOW VEXINGLY QUICK DAFT ZEBRAS JUMP",
    "Bring the red folder and two pens",
    "Flight 772 lands at gate B12",
    "all systems nominal",
    "JACKDAWS LOVE MY BIG SPHINX OF QUARTZ",
    "the password hint is the river",
    "Budget approved for 2026",
    "Lunch at noon on Friday",
    "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE 0123456789",
    "abcdefghijklmnopqrstuvwxyz",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "Quiet hours start at 22",
    "the train leaves from platform 3",
    "Grace notes in bar 41",
    "Vote on motion 17 passed",
    "Ship the fix by Thursday",
    "Inventory count 1024 boxes",
    "NO NEWS IS GOOD NEWS",
)
