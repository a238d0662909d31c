//! A missing or malformed variable stops `event-sync` at start with one line naming it (exit 78).

#[test]
fn stops_with_one_line_naming_a_missing_or_malformed_variable() {
    testkit::stack::assert_stops_on_bad_configuration(
        env!("CARGO_BIN_EXE_event-sync"),
        &calsync::config::REQUIRED_VARIABLES,
    );
}
