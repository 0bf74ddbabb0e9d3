use super::*;

#[test]
fn resolves_counts_shares_and_all() {
    assert_eq!(NJobs::from(-1).resolve(8).unwrap(), 8);
    assert_eq!(NJobs::from(3).resolve(8).unwrap(), 3);
    assert_eq!(NJobs::from(30u64).resolve(8).unwrap(), 8);
    assert_eq!(NJobs::from(0.5).resolve(8).unwrap(), 4);
    assert_eq!(NJobs::from(0.01).resolve(8).unwrap(), 1);
    assert_eq!(NJobs::from(1.0).resolve(8).unwrap(), 8);
}

#[test]
fn rejects_everything_else_with_a_message() {
    for bad in [
        NJobs::from(0),
        NJobs::from(-2),
        NJobs::from(1.5),
        NJobs::from(f64::NAN),
        NJobs::from(0.0),
        NJobs::from(-0.5),
    ] {
        let e = bad.resolve(8).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidConfig {
                    setting: "n_jobs",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("-1 for every CPU"), "{e}");
    }
}
