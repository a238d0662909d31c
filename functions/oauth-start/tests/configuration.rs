//! A missing or malformed variable stops `oauth-start` at start with one line naming it (exit 78).

#[test]
fn stops_with_one_line_naming_a_missing_or_malformed_variable() {
    let checked = xtask::testkit::check_stops_on_bad_configuration(
        env!("CARGO_BIN_EXE_oauth-start").as_ref(),
    )
    .unwrap();
    assert_eq!(checked, xtask::testkit::REQUIRED_VARIABLES.len() + 1);
}
