//! A missing or malformed variable stops `resync` at start with one line naming it (exit 78).

use calsync::config::REQUIRED_VARIABLES;

#[test]
fn stops_with_one_line_naming_a_missing_or_malformed_variable() {
    let binary = env!("CARGO_BIN_EXE_resync");
    let checked =
        testkit::stack::check_stops_on_bad_configuration(binary.as_ref(), &REQUIRED_VARIABLES)
            .unwrap();
    assert_eq!(checked, REQUIRED_VARIABLES.len() + 1);
}
