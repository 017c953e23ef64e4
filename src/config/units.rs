//! Human-readable durations (`"250ms"`, `"10s"`, `"5m"`, `"1h"`) and sizes (`"64KiB"`,
//! `"10MiB"`, `"512"`) in the YAML config: the plugin API's types, so the gateway's settings and
//! every plugin's config read them the same way.

pub use gatehouse_plugins::api::units::{
    parse_duration, parse_size, Dur, NonZeroDur, NonZeroSize, Size,
};
