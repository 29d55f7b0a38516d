"""The emoji domain: six openly licensed emoji styles with CLDR names (docs/emoji-spec.md)."""
