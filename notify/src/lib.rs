#![doc = include_str!("../README.md")]

pub mod mail;
pub mod templates;
pub mod webhook;
