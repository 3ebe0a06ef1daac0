"""Every word the operator console shows, in Norwegian (nb, the default) and English (en).

The code and the API speak English (GLOSSARY.md); operators read Norwegian. One table per
language, the same keys in each, so a missing translation is a test failure, not a KeyError
in the middle of a night shift.
"""

from __future__ import annotations

from collections.abc import Mapping

LANGUAGES = ("nb", "en")

_NB: dict[str, str] = {
    "title": "alarmd – operatør",
    "tab_alarm": "Alarmer",
    "tab_technical": "Tekniske",
    "col_case": "Sak",
    "col_tenant": "Kommune",
    "col_kind": "Type",
    "col_state": "Status",
    "col_left": "Frist",
    "col_holder": "Tatt av",
    "open_cases": "Åpne",
    "oldest_unaccepted": "Eldste ikke tatt",
    "clarification_today": "Avklaringsgrad i dag",
    "none": "–",
    "overdue": "forfalt",
    "connected": "tilkoblet",
    "disconnected": "frakoblet – kobler til igjen",
    "no_case_selected": "Ingen sak valgt",
    "taken_by": "Allerede tatt av {who}",
    "refused": "Avvist: {reason}",
    "error": "Feil: {reason}",
    "accepted": "Sak {id} tatt",
    "noted": "Notat lagt til sak {id}",
    "on_site": "Sak {id}: på stedet",
    "closed": "Sak {id} lukket: {outcome}",
    "dispatched": "Sak {id}: sendt {to}",
    "new_alarm": "Ny alarm: sak {id} ({kind}, {tenant})",
    "note_prompt": "Notat til sak {id} (Enter lagrer, Esc avbryter)",
    "note_placeholder": "Skriv notat…",
    "close_prompt": "Lukk sak {id}: velg utfall (1-7), skriv notat, Enter lagrer",
    "close_choose": "Velg et utfall først (1-7)",
    "dispatch_prompt": "Send til sak {id}: velg (1-3), Esc avbryter",
    "dispatch_note": "Sendt: {to}",
    "case_title": "Sak {id} – {kind} – {tenant}",
    "who_where": "Hvem og hvor",
    "phone": "tlf",
    "device": "Enhet",
    "group": "gruppe",
    "loc_home": "hjemme",
    "loc_away": "borte",
    "loc_care_home": "omsorgsbolig",
    "source": "Kilde",
    "flags": "Merknader",
    "unregistered": "ukjent avsender (ingen bruker registrert)",
    "plan": "Responsplan",
    "no_plan": "Ingen responsplan (ukjent bruker)",
    "no_decision": "Ingen gyldig vedtak: meld fra til tildelingskontoret",
    "instructions": "Instrukser",
    "key_box": "Nøkkelboks",
    "key_box_hidden": "(ikke synlig for din rolle)",
    "home_care_team": "Hjemmetjeneste",
    "contacts": "Kontakter",
    "has_key": "har nøkkel",
    "log": "Logg",
    "affected": "Berørte brukere ({n})",
    "reason_link_lost": "stille",
    "reason_mains_lost": "strøm borte",
    "since": "siden",
    "battery_out": "batteri tomt",
    "priority": "Prioritet",
    "state": "Status",
    "deadline": "Frist",
    "holder": "Tatt av",
    "outcome": "Utfall",
    "key_accept": "Ta",
    "key_note": "Notat",
    "key_dispatch": "Send",
    "key_on_site": "På stedet",
    "key_close": "Lukk",
    "key_open": "Åpne",
    "key_back": "Tilbake",
    "key_refresh": "Oppdater",
    "key_queue": "Tekn./alarm",
    "key_quit": "Avslutt",
    "key_cancel": "Avbryt",
}

_EN: dict[str, str] = {
    "title": "alarmd – operator",
    "tab_alarm": "Alarms",
    "tab_technical": "Technical",
    "col_case": "Case",
    "col_tenant": "Municipality",
    "col_kind": "Kind",
    "col_state": "State",
    "col_left": "Due",
    "col_holder": "Held by",
    "open_cases": "Open",
    "oldest_unaccepted": "Oldest unaccepted",
    "clarification_today": "Clarified today",
    "none": "–",
    "overdue": "overdue",
    "connected": "connected",
    "disconnected": "disconnected – reconnecting",
    "no_case_selected": "No case selected",
    "taken_by": "Already taken by {who}",
    "refused": "Refused: {reason}",
    "error": "Error: {reason}",
    "accepted": "Case {id} accepted",
    "noted": "Note added to case {id}",
    "on_site": "Case {id}: on site",
    "closed": "Case {id} closed: {outcome}",
    "dispatched": "Case {id}: sent {to}",
    "new_alarm": "New alarm: case {id} ({kind}, {tenant})",
    "note_prompt": "Note on case {id} (Enter saves, Esc cancels)",
    "note_placeholder": "Write a note…",
    "close_prompt": "Close case {id}: pick an outcome (1-7), write a note, Enter saves",
    "close_choose": "Pick an outcome first (1-7)",
    "dispatch_prompt": "Send to case {id}: pick (1-3), Esc cancels",
    "dispatch_note": "Sent: {to}",
    "case_title": "Case {id} – {kind} – {tenant}",
    "who_where": "Who and where",
    "phone": "phone",
    "device": "Device",
    "group": "group",
    "loc_home": "at home",
    "loc_away": "away",
    "loc_care_home": "care home",
    "source": "Source",
    "flags": "Flags",
    "unregistered": "unknown sender (no service user registered)",
    "plan": "Response plan",
    "no_plan": "No response plan (unknown user)",
    "no_decision": "No valid decision: tell the allocation office",
    "instructions": "Instructions",
    "key_box": "Key box",
    "key_box_hidden": "(not shown to your role)",
    "home_care_team": "Home care",
    "contacts": "Contacts",
    "has_key": "has a key",
    "log": "Log",
    "affected": "Affected users ({n})",
    "reason_link_lost": "silent",
    "reason_mains_lost": "mains lost",
    "since": "since",
    "battery_out": "battery out",
    "priority": "Priority",
    "state": "State",
    "deadline": "Due",
    "holder": "Held by",
    "outcome": "Outcome",
    "key_accept": "Accept",
    "key_note": "Note",
    "key_dispatch": "Dispatch",
    "key_on_site": "On site",
    "key_close": "Close",
    "key_open": "Open",
    "key_back": "Back",
    "key_refresh": "Refresh",
    "key_queue": "Tech/alarm",
    "key_quit": "Quit",
    "key_cancel": "Cancel",
}

_KINDS: dict[str, dict[str, str]] = {
    "nb": {
        "assistance": "Trygghetsalarm",
        "fall": "Fall",
        "inactivity": "Inaktivitet",
        "fire": "Brann",
        "gas": "Gass",
        "water": "Vannlekkasje",
        "exit": "Dør/vandring",
        "bed_exit": "Ut av seng",
        "epilepsy": "Epilepsi",
        "medication": "Medisin",
        "panic": "Panikk",
        "intruder": "Innbrudd",
        "other_alarm": "Annen alarm",
        "battery_low": "Lavt batteri",
        "mains_lost": "Strømbrudd",
        "link_lost": "Linjebrudd",
        "tamper": "Sabotasje",
        "device_fault": "Enhetsfeil",
        "radio_supervision": "Radiotilsyn",
        "test": "Test",
        "cancel": "Avbrutt",
        "carer_present": "Til stede",
        "check_out": "Utsjekk",
    },
    "en": {
        "assistance": "Safety alarm",
        "fall": "Fall",
        "inactivity": "Inactivity",
        "fire": "Fire",
        "gas": "Gas",
        "water": "Water leak",
        "exit": "Door/wandering",
        "bed_exit": "Bed exit",
        "epilepsy": "Epilepsy",
        "medication": "Medication",
        "panic": "Panic",
        "intruder": "Intruder",
        "other_alarm": "Other alarm",
        "battery_low": "Battery low",
        "mains_lost": "Power cut",
        "link_lost": "Link lost",
        "tamper": "Tamper",
        "device_fault": "Device fault",
        "radio_supervision": "Radio supervision",
        "test": "Test",
        "cancel": "Cancelled",
        "carer_present": "Carer present",
        "check_out": "Check-out",
    },
}

_STATES: dict[str, dict[str, str]] = {
    "nb": {
        "new": "Ny",
        "notifying": "Varsler",
        "at_centre": "Sentralen",
        "accepted": "Tatt",
        "on_site": "På stedet",
        "closed": "Lukket",
    },
    "en": {
        "new": "New",
        "notifying": "Notifying",
        "at_centre": "At centre",
        "accepted": "Accepted",
        "on_site": "On site",
        "closed": "Closed",
    },
}

# In the order of the close picker's keys 1-7 (Outcome in alarmd/model.py).
OUTCOMES = (
    "resolved_by_phone",
    "home_care_dispatched",
    "ambulance",
    "next_of_kin",
    "accidental",
    "technical",
    "test",
)

_OUTCOMES: dict[str, dict[str, str]] = {
    "nb": {
        "resolved_by_phone": "Avklart på telefon",
        "home_care_dispatched": "Hjemmetjenesten sendt",
        "ambulance": "Ambulanse",
        "next_of_kin": "Pårørende",
        "accidental": "Utløst ved uhell",
        "technical": "Teknisk feil",
        "test": "Test",
    },
    "en": {
        "resolved_by_phone": "Resolved by phone",
        "home_care_dispatched": "Home care dispatched",
        "ambulance": "Ambulance",
        "next_of_kin": "Next of kin",
        "accidental": "Accidental",
        "technical": "Technical fault",
        "test": "Test",
    },
}

# In the order of the dispatch picker's keys 1-3 (DISPATCH_TARGETS in routing/engine.py).
DISPATCH_TARGETS = ("home_care", "ambulance", "next_of_kin")

_DISPATCH: dict[str, dict[str, str]] = {
    "nb": {"home_care": "hjemmetjeneste", "ambulance": "ambulanse", "next_of_kin": "pårørende"},
    "en": {"home_care": "home care", "ambulance": "ambulance", "next_of_kin": "next of kin"},
}


class Texts:
    """The console's words in one language; unknown codes are shown as they are."""

    def __init__(self, lang: str = "nb") -> None:
        if lang not in LANGUAGES:
            raise ValueError(f"language: one of {', '.join(LANGUAGES)}, not {lang!r}")
        self.lang = lang
        self._words: Mapping[str, str] = _NB if lang == "nb" else _EN

    def __call__(self, key: str, **values: object) -> str:
        return self._words[key].format(**values)

    def kind(self, code: str) -> str:
        return _KINDS[self.lang].get(code, code)

    def state(self, code: str) -> str:
        return _STATES[self.lang].get(code, code)

    def outcome(self, code: str) -> str:
        return _OUTCOMES[self.lang].get(code, code)

    def dispatch(self, code: str) -> str:
        return _DISPATCH[self.lang].get(code, code)


def missing_translations() -> list[str]:
    """Keys present in one language and not the other (a test keeps this empty)."""
    tables = [(_NB, _EN), (_KINDS["nb"], _KINDS["en"]), (_STATES["nb"], _STATES["en"])]
    tables += [(_OUTCOMES["nb"], _OUTCOMES["en"]), (_DISPATCH["nb"], _DISPATCH["en"])]
    return sorted(k for a, b in tables for k in set(a) ^ set(b))
