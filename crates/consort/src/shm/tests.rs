//! Unit tests for `shm`: ownership, names, descriptors.

use super::*;

#[test]
fn the_creator_unlinks_on_drop_and_an_attacher_never_does() {
    let mut created = SharedMemory::create(1000).expect("create");
    assert!(created.name().starts_with("psm_") && created.name().len() == 12);
    assert_eq!((created.rsize(), created.size()), (1000, 1000));
    created.as_mut_slice()[999] = 7;
    let name = created.name().to_owned();
    {
        let attached = SharedMemory::attach(&name).expect("attach");
        assert!(!attached.is_owner());
        assert_eq!(attached.as_slice()[999], 7);
    }
    // Dropping the attacher left the block in place.
    assert_eq!(
        SharedMemory::attach(&name).expect("still there").as_slice()[999],
        7
    );
    drop(created);
    assert!(matches!(
        SharedMemory::attach(&name),
        Err(ShmError::NotFound(_))
    ));
}

#[test]
fn a_kept_block_outlives_its_creator_handle() {
    let mut created = SharedMemory::create(16).expect("create");
    created.keep();
    let name = created.name().to_owned();
    drop(created);
    assert_eq!(SharedMemory::attach(&name).expect("kept").size(), 16);
    SharedMemory::unlink(&name).expect("unlink");
    assert!(matches!(
        SharedMemory::unlink(&name),
        Err(ShmError::NotFound(_))
    ));
}

#[test]
fn bad_names_and_sizes_are_clear_errors() {
    for name in [
        "",
        "/psm_1",
        "a/b",
        "..",
        "x..y",
        "psm\0x",
        "é",
        &"x".repeat(31),
    ] {
        assert!(
            matches!(
                SharedMemory::attach(name),
                Err(ShmError::InvalidName { .. })
            ),
            "{name:?} should be refused"
        );
    }
    assert!(matches!(SharedMemory::create(0), Err(ShmError::ZeroSize)));
    assert!(matches!(
        SharedMemory::attach("psm_nothere0"),
        Err(ShmError::NotFound(_))
    ));
}

#[test]
fn descriptors_round_trip_accept_legacy_size_and_refuse_oversize() {
    let created = SharedMemory::create(64).expect("create");
    let descriptor = created.to_json();
    assert_eq!(
        descriptor,
        serde_json::json!({"appose_type": "shm", "name": created.name(), "rsize": 64})
    );
    assert_eq!(
        SharedMemory::from_json(&descriptor)
            .expect("attach")
            .rsize(),
        64
    );
    let legacy = serde_json::json!({"appose_type": "shm", "name": created.name(), "size": 10});
    assert_eq!(
        SharedMemory::from_json(&legacy)
            .expect("legacy")
            .as_slice()
            .len(),
        10
    );
    let oversize = serde_json::json!({"appose_type": "shm", "name": created.name(), "rsize": 65});
    assert!(matches!(
        SharedMemory::from_json(&oversize),
        Err(ShmError::SizeMismatch {
            rsize: 65,
            size: 64,
            ..
        })
    ));
    assert!(matches!(
        SharedMemory::from_json(&serde_json::json!({"appose_type": "ndarray"})),
        Err(ShmError::BadDescriptor(_))
    ));
}
