package sni

import (
	"testing"
)

func TestIsGREASE(t *testing.T) {
	// RFC 8701 §2: exactly the 16 values 0x0a0a, 0x1a1a, ..., 0xfafa.
	var got []uint16
	for v := range 1 << 16 {
		if isGREASE(uint16(v)) {
			got = append(got, uint16(v))
		}
	}
	if len(got) != 16 {
		t.Fatalf("%d GREASE values, want 16: %04x", len(got), got)
	}
	for i, v := range got {
		if want := uint16(i)<<12 | 0x0a00 | uint16(i)<<4 | 0x0a; v != want {
			t.Errorf("GREASE value %d = %04x, want %04x", i, v, want)
		}
	}
	for _, v := range []uint16{0x00ff, 0x5600, 0xff01, 0x0a1a, 0x1a0a, 0x0a0b, 0x0021} {
		if isGREASE(v) {
			t.Errorf("isGREASE(%04x) = true", v)
		}
	}
}

// TestJA3Hash checks JA3 string → MD5 with published pairs.
func TestJA3Hash(t *testing.T) {
	for _, tc := range []struct{ s, want, source string }{
		// Chainguard seed (task brief).
		{"771,49195-49199-49196-49200-52393-52392-49161-49171-49162-49172-156-157-47-53-49170-10-4865-4866-4867,0-5-10-11-13-65281-16-18-43-51,29-23-24-25,0",
			"3fed133de60c35724739b913924b6c24", "chainguard seed"},
		// salesforce/ja3 README.md, "How it works".
		{"769,47-53-5-10-49161-49162-49171-49172-50-56-19-4,0-10-11,23-24-25,0", "ada70206e40642a3e4461f35503241d5", "salesforce README"},
		{"769,4-5-10-9-100-98-3-6-19-18-99,,,", "de350869b8c85de67a350c8d186f11e6", "salesforce README, no extensions"},
	} {
		if got := ja3Hash([]byte(tc.s)); got != tc.want {
			t.Errorf("%s: md5(%q) = %s, want %s", tc.source, tc.s, got, tc.want)
		}
	}
}

// TestJA3FromFields builds Hellos from field values and checks JA3(), and
// builds the same hellos on the wire and checks the parse gives them back.
func TestJA3FromFields(t *testing.T) {
	for _, tc := range []struct {
		name              string
		h                 Hello
		wantFull, wantMD5 string
	}{
		{
			name: "chainguard seed",
			h: Hello{
				LegacyVersion:   771,
				CipherSuites:    []uint16{49195, 49199, 49196, 49200, 52393, 52392, 49161, 49171, 49162, 49172, 156, 157, 47, 53, 49170, 10, 4865, 4866, 4867},
				Extensions:      []uint16{0, 5, 10, 11, 13, 65281, 16, 18, 43, 51},
				SupportedGroups: []uint16{29, 23, 24, 25},
				PointFormats:    []uint8{0},
			},
			wantFull: "771,49195-49199-49196-49200-52393-52392-49161-49171-49162-49172-156-157-47-53-49170-10-4865-4866-4867,0-5-10-11-13-65281-16-18-43-51,29-23-24-25,0",
			wantMD5:  "3fed133de60c35724739b913924b6c24",
		},
		{
			name: "salesforce README",
			h: Hello{
				LegacyVersion:   769,
				CipherSuites:    []uint16{47, 53, 5, 10, 49161, 49162, 49171, 49172, 50, 56, 19, 4},
				Extensions:      []uint16{0, 10, 11},
				SupportedGroups: []uint16{23, 24, 25},
				PointFormats:    []uint8{0},
			},
			wantFull: "769,47-53-5-10-49161-49162-49171-49172-50-56-19-4,0-10-11,23-24-25,0",
			wantMD5:  "ada70206e40642a3e4461f35503241d5",
		},
		{
			name: "no extensions",
			h: Hello{
				LegacyVersion: 769,
				CipherSuites:  []uint16{4, 5, 10, 9, 100, 98, 3, 6, 19, 18, 99},
			},
			wantFull: "769,4-5-10-9-100-98-3-6-19-18-99,,,",
			wantMD5:  "de350869b8c85de67a350c8d186f11e6",
		},
		{
			name: "GREASE everywhere is dropped",
			h: Hello{
				LegacyVersion:   771,
				CipherSuites:    []uint16{0x1a1a, 4865, 0xfafa},
				Extensions:      []uint16{0x2a2a, 0, 0xeaea, 10, 11},
				SupportedGroups: []uint16{0x3a3a, 29},
				PointFormats:    []uint8{0},
			},
			wantFull: "771,4865,0-10-11,29,0",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			full, hash := tc.h.JA3()
			if full != tc.wantFull {
				t.Errorf("JA3 string\n got %s\nwant %s", full, tc.wantFull)
			}
			if tc.wantMD5 != "" && hash != tc.wantMD5 {
				t.Errorf("JA3 = %s, want %s", hash, tc.wantMD5)
			}
			if hash != ja3Hash([]byte(full)) {
				t.Errorf("JA3 hash %s is not md5 of its string", hash)
			}

			// The same lists on the wire.
			th := testHello{version: tc.h.LegacyVersion, ciphers: tc.h.CipherSuites, compression: []byte{0}}
			th.noExts = len(tc.h.Extensions) == 0
			for _, e := range tc.h.Extensions {
				var data []byte
				switch e {
				case 0:
					data = sniData(0, "example.com")
				case 10:
					data = u16list16(tc.h.SupportedGroups...)
				case 11:
					data = u8list8(tc.h.PointFormats...)
				case 13:
					data = u16list16(0x0403)
				case 16:
					data = alpnData("h2")
				case 43:
					data = u8list16(0x0304)
				}
				th.exts = append(th.exts, testExt{e, data})
			}
			var h Hello
			if _, err := ParseRecords(th.records(), &h); err != nil {
				t.Fatal(err)
			}
			if got, _ := h.JA3(); got != tc.wantFull {
				t.Errorf("parsed JA3 string\n got %s\nwant %s", got, tc.wantFull)
			}
		})
	}
}

// chromeSpecHello is the example hello of FoxIO's JA4.md ("JA4 Algorithm",
// "Raw Output"), with GREASE values added the way Chrome sends them.
func chromeSpecHello() Hello {
	return Hello{
		LegacyVersion:       0x0303,
		CipherSuites:        []uint16{0x3a3a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035},
		Extensions:          []uint16{0x0a0a, 0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023, 0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015, 0x5a5a},
		SupportedVersions:   []uint16{0x7a7a, 0x0304, 0x0303},
		SignatureAlgorithms: []uint16{0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601},
		ALPN:                []string{"h2", "http/1.1"},
		ServerName:          "example.com",
		HasServerName:       true,
	}
}

func TestJA4Spec(t *testing.T) {
	// FoxIO-LLC/ja4 technical_details/JA4.md.
	h := chromeSpecHello()
	if got, want := h.JA4(false), "t13d1516h2_8daaf6152771_e5627efa2ab1"; got != want {
		t.Errorf("JA4 = %s, want %s", got, want)
	}
	if got, want := h.JA4Raw(false), "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601"; got != want {
		t.Errorf("JA4_r\n got %s\nwant %s", got, want)
	}
	if got, want := h.JA4(true), "q13d1516h2_8daaf6152771_e5627efa2ab1"; got != want {
		t.Errorf("JA4(quic) = %s, want %s", got, want)
	}
	// JA4.md: "If there are no signature algorithms in the hello packet,
	// then the string ends without an underscore" → 6d807ffa2a79.
	h.SignatureAlgorithms = nil
	if got, want := h.JA4(false), "t13d1516h2_8daaf6152771_6d807ffa2a79"; got != want {
		t.Errorf("JA4 without sig algs = %s, want %s", got, want)
	}
	if got, want := h.JA4Raw(false), "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01"; got != want {
		t.Errorf("JA4_r without sig algs\n got %s\nwant %s", got, want)
	}
}

// TestJA4SigAlgGREASE uses FoxIO's published values for
// pcap/sigalg-grease.pcapng (python/test/testdata/sigalg-grease.pcapng.json):
// a Chrome hello whose signature_algorithms list starts with GREASE 0x0a0a,
// which JA4 drops. The lists are the JA4_ro lists with GREASE put back where
// Chrome sends it.
func TestJA4SigAlgGREASE(t *testing.T) {
	h := Hello{
		LegacyVersion:       0x0303,
		CipherSuites:        []uint16{0x8a8a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035},
		Extensions:          []uint16{0x9a9a, 0xfe0d, 0x0010, 0x0017, 0x0033, 0x44cd, 0xff01, 0x000a, 0x000d, 0x0023, 0x002b, 0x000b, 0xca34, 0x002d, 0x0000, 0x0005, 0x001b, 0x0012, 0x4a4a},
		SupportedVersions:   []uint16{0x2a2a, 0x0304, 0x0303},
		SignatureAlgorithms: []uint16{0x0a0a, 0x0904, 0x0905, 0x0906, 0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601},
		ALPN:                []string{"h2", "http/1.1"},
	}
	if got, want := h.JA4(false), "t13d1517h2_8daaf6152771_cb7bf5808d99"; got != want {
		t.Errorf("JA4 = %s, want %s", got, want)
	}
	if got, want := h.JA4Raw(false), "t13d1517h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0017,001b,0023,002b,002d,0033,44cd,ca34,fe0d,ff01_0904,0905,0906,0403,0804,0401,0503,0805,0501,0806,0601"; got != want {
		t.Errorf("JA4_r\n got %s\nwant %s", got, want)
	}
}

func TestJA4ALPN(t *testing.T) {
	for _, tc := range []struct {
		alpn []string
		want string
	}{
		{nil, "00"},
		{[]string{"h2", "http/1.1"}, "h2"},
		{[]string{"http/1.1"}, "h1"},
		{[]string{"h3"}, "h3"},
		{[]string{"acme-tls/1"}, "a1"},
		{[]string{"x"}, "xx"}, // spec: a single character is both first and last
		{[]string{"h2c"}, "hc"},
		// The JA4.md examples for non-alphanumeric first or last bytes.
		{[]string{"\xab"}, "ab"},
		{[]string{"\xab\xcd"}, "ad"},
		{[]string{"\x30\xab"}, "3b"},
		{[]string{"\x30\x31\xab\xcd"}, "3d"},
		{[]string{"\x30\xab\xcd\x31"}, "01"},
		{[]string{"\xba\xad", "http/1.1"}, "bd"}, // FoxIO tls-non-ascii-alpn (tools print 99)
		{[]string{"/x"}, "28"},
		{[]string{"x/"}, "7f"},
		{[]string{""}, "00"},
	} {
		h := Hello{LegacyVersion: 0x0303, CipherSuites: []uint16{0x1301}, ALPN: tc.alpn}
		if got := h.JA4(false)[8:10]; got != tc.want {
			t.Errorf("ALPN %q: %s, want %s", tc.alpn, got, tc.want)
		}
	}
}

func TestJA4Version(t *testing.T) {
	for _, tc := range []struct {
		legacy uint16
		vers   []uint16
		want   string
	}{
		{0x0303, nil, "12"},
		{0x0301, nil, "10"},
		{0x0302, nil, "11"},
		{0x0300, nil, "s3"},
		{0x0304, nil, "13"}, // no supported_versions: legacy_version as is
		{0x0303, []uint16{0x0304, 0x0303}, "13"},
		{0x0303, []uint16{0x0303, 0x0304}, "13"},                 // highest, not first
		{0x0303, []uint16{0x3a3a, 0x0303, 0x0302}, "12"},         // GREASE ignored
		{0x0303, []uint16{0x3a3a, 0x7f17, 0x0303, 0x0302}, "00"}, // draft 23 is highest: unknown (ssl-chrome)
		{0x0303, []uint16{0xfafa}, "00"},                         // only GREASE
		{0xfefd, nil, "d2"},
		{0x1234, nil, "00"},
	} {
		h := Hello{LegacyVersion: tc.legacy, SupportedVersions: tc.vers}
		if got := h.JA4(false)[1:3]; got != tc.want {
			t.Errorf("legacy %04x versions %04x: %s, want %s", tc.legacy, tc.vers, got, tc.want)
		}
	}
}

func TestJA4Empty(t *testing.T) {
	// Nothing at all: both hashes are the zero marker, raw parts are empty.
	var h Hello
	if got, want := h.JA4(false), "t00i000000_000000000000_000000000000"; got != want {
		t.Errorf("JA4 = %s, want %s", got, want)
	}
	if got, want := h.JA4Raw(false), "t00i000000__"; got != want {
		t.Errorf("JA4_r = %s, want %s", got, want)
	}
	// Only SNI and ALPN: the c list is empty (FoxIO https3-301-get pattern).
	h = Hello{LegacyVersion: 0x0301, CipherSuites: []uint16{0x002f}, Extensions: []uint16{0, 16}, ALPN: []string{"h2"}}
	if got, want := h.JA4(false), "t10d0102h2_"; got[:11] != want || got[24:] != "000000000000" {
		t.Errorf("JA4 = %s, want %s…_000000000000", got, want)
	}
	if got, want := h.JA4Raw(false), "t10d0102h2_002f_"; got != want {
		t.Errorf("JA4_r = %s, want %s", got, want)
	}
}

func TestJA4Counts(t *testing.T) {
	var h Hello
	h.LegacyVersion = 0x0303
	for i := range 150 {
		h.CipherSuites = append(h.CipherSuites, uint16(0x0100+i))
		h.Extensions = append(h.Extensions, uint16(0x0100+i))
	}
	h.CipherSuites = append(h.CipherSuites, 0x0a0a)
	if got := h.JA4(false)[:10]; got != "t12i999900" {
		t.Errorf("a part = %s, want t12i999900 (counts capped at 99)", got)
	}
	h = Hello{CipherSuites: []uint16{0x0a0a, 0x1301, 0x5600, 0x00ff}, Extensions: []uint16{0x1a1a, 0x0000}}
	if got := h.JA4(false)[:10]; got != "t00d0301"+"00" {
		t.Errorf("a part = %s, want t00d030100 (GREASE not counted, SCSVs counted)", got)
	}
	// Long lists spill out of the stack buffers and stay correct.
	raw := (&Hello{CipherSuites: make([]uint16, 3000)}).JA4Raw(false)
	if want := 11 + 3000*5 - 1 + 1; len(raw) != want {
		t.Errorf("raw length %d, want %d", len(raw), want)
	}
}
