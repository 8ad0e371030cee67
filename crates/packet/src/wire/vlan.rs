//! 802.1Q / 802.1ad VLAN tags.
//!
//! A [`VlanTag`] views the 4 bytes that follow a `0x8100` (or `0x88a8`)
//! ethertype: the tag control information (PCP, DEI, VID) and the
//! ethertype of what comes next.

use super::{get_u16, set_u16, WireError};

/// Bytes of a tag after the TPID: TCI + inner ethertype.
pub const HEADER_LEN: usize = 4;

/// A view of one VLAN tag (TCI and inner ethertype).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl VlanTag<&'static [u8]> {
    pub const HEADER_LEN: usize = HEADER_LEN;
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    #[inline]
    pub fn new_unchecked(buffer: T) -> VlanTag<T> {
        VlanTag { buffer }
    }

    #[inline]
    pub fn new_checked(buffer: T) -> Result<VlanTag<T>, WireError> {
        let t = VlanTag::new_unchecked(buffer);
        t.check_len()?;
        Ok(t)
    }

    #[inline]
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Tag control information (PCP:3, DEI:1, VID:12).
    #[inline]
    pub fn tci(&self) -> u16 {
        get_u16(self.buffer.as_ref(), 0)
    }

    /// VLAN identifier (12 bits).
    #[inline]
    pub fn vid(&self) -> u16 {
        self.tci() & 0x0FFF
    }

    /// Priority code point (3 bits).
    #[inline]
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }

    /// Drop eligible indicator.
    #[inline]
    pub fn dei(&self) -> bool {
        self.tci() & 0x1000 != 0
    }

    /// Ethertype of the encapsulated header (or of the next tag).
    #[inline]
    pub fn inner_ethertype(&self) -> u16 {
        get_u16(self.buffer.as_ref(), 2)
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VlanTag<T> {
    #[inline]
    pub fn set_tci(&mut self, tci: u16) {
        set_u16(self.buffer.as_mut(), 0, tci);
    }

    /// Sets the VID (values above 4095 are masked to 12 bits).
    #[inline]
    pub fn set_vid(&mut self, vid: u16) {
        let tci = (self.tci() & 0xF000) | (vid & 0x0FFF);
        self.set_tci(tci);
    }

    /// Sets the PCP (masked to 3 bits).
    #[inline]
    pub fn set_pcp(&mut self, pcp: u8) {
        let tci = (self.tci() & 0x1FFF) | (((pcp & 7) as u16) << 13);
        self.set_tci(tci);
    }

    #[inline]
    pub fn set_dei(&mut self, dei: bool) {
        let tci = (self.tci() & !0x1000) | if dei { 0x1000 } else { 0 };
        self.set_tci(tci);
    }

    #[inline]
    pub fn set_inner_ethertype(&mut self, t: u16) {
        set_u16(self.buffer.as_mut(), 2, t);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// The fields of a VLAN tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VlanRepr {
    pub vid: u16,
    pub pcp: u8,
    pub dei: bool,
    pub inner_ethertype: u16,
}

impl VlanRepr {
    pub fn parse<T: AsRef<[u8]>>(tag: &VlanTag<T>) -> Result<VlanRepr, WireError> {
        tag.check_len()?;
        Ok(VlanRepr {
            vid: tag.vid(),
            pcp: tag.pcp(),
            dei: tag.dei(),
            inner_ethertype: tag.inner_ethertype(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the tag (VID masked to 12 bits, PCP to 3); the buffer must
    /// be at least [`HEADER_LEN`] long.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, tag: &mut VlanTag<T>) {
        let tci =
            ((self.pcp as u16 & 7) << 13) | if self.dei { 0x1000 } else { 0 } | (self.vid & 0x0FFF);
        tag.set_tci(tci);
        tag.set_inner_ethertype(self.inner_ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_fields() {
        // PCP 5, DEI 1, VID 0x123, then IPv4.
        let buf = [0xB1, 0x23, 0x08, 0x00, 0xAA];
        let t = VlanTag::new_checked(&buf[..]).unwrap();
        assert_eq!((t.pcp(), t.dei(), t.vid(), t.inner_ethertype()), (5, true, 0x123, 0x0800));
        assert_eq!(t.payload(), &[0xAA]);
        assert_eq!(VlanTag::new_checked(&buf[..3]), Err(WireError::Truncated));

        let mut out = [0u8; 4];
        let mut t2 = VlanTag::new_unchecked(&mut out[..]);
        VlanRepr::parse(&t).unwrap().emit(&mut t2);
        assert_eq!(out, buf[..4]);
        let mut t3 = VlanTag::new_unchecked(&mut out[..]);
        t3.set_vid(7);
        t3.set_pcp(0);
        t3.set_dei(false);
        assert_eq!(out, [0x00, 0x07, 0x08, 0x00]);
    }
}
