//! Wireless WDMoE simulator (work in progress).
