//! Fixed keys for the unit tests only, generated once with `openssl genpkey` on the development machine.
//!
//! Test-only: nothing outside `#[cfg(test)]` can reach them. Embedded rather than generated because the
//! crate has no key-generation dependency of its own (aws-lc-rs is only a transitive dependency).

pub(super) const RSA_A_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCKKi2UOL80tpZK\n\
Vp6m1a5qTRu1KdTbDO69TxdiXKXjdf+mPXxLX72Q2W+tjanPyCqREB6zP/7wUgWE\n\
GL1q+7Qy3GSSXj/oAqXbWdOBK8MrdvagE6fRHBQbSFyUhALGnQeA3pWyHa412ON/\n\
sCBM8+A8YefGRfdcY4CwhC5Bz8iRiZafDtSLsk3w7VBMqPA0K44eVpw51cB0JDfp\n\
Wtksf1ktk6Lyhl049HaAp3z/HlIVVPDPIzznU8S1NE/lYYtPo53RyFHcQ8FWZrug\n\
LAHiSAFZscgHvgWGewbTunbV7NGeM6aUsXbWXllmNFFWbF8zc8e0W1/NPEycG37a\n\
o+7clYNTAgMBAAECggEAIICFkl27FTJyrnAsCEEyM42KHBcIHLOxIdWOQbRbzeN/\n\
TWMfbzfJh16vN9uge+GxqchqAG7okS4qYAXV4Wnu3RwdiJUlYXXmAHDkIXnjAsGM\n\
iOG206lQTY67QLDBWmmsTzONcYYr6jzoX6xWHOQt9uZtOKZS52f86QlfPFod66Zi\n\
zVGAh/WgyRpt1gBJxbiPhMhCOfqdynhSDHyY47w0dawmi+k6ZIneceWgU0PmwCHD\n\
BA57Ot+TW5Jm//PPuYClrQz1QJ+Iyo9ihbAvxlVhyxmtwsKVmHVSaRmJF5MmQnLE\n\
O6JaRT8KEYtLDA4qfAfqt7gRIKUwuPoGo6A+OXNAGQKBgQC8PDWK+uQw3e6PPLa6\n\
jhFaJVcGHSJ3M82DoLyL097o6PuddbR4lfnaknmBcNAnPbYSvH+cx5M5hjMLXFRx\n\
nfdo4rALPkBVR4mpgJPEoRYD0ybTxeoqYM0mbiXKBjkk2v1Bpab/6pRlWxzgukGj\n\
JB93X3f/1lF2LSkYOmMWuxIC9wKBgQC753feORP5qPwl7kkfx6OW1VneLI+OT25K\n\
mILZBbdVa2xDdOLswqgy0wd4yv42ux4oyCyDQjG4R8zeipC74wzHXL54gXkLnUg4\n\
x1w80HYE4+N2Ge+/Ij5K9gMpbi0o/dguum0mYGrmmaPPIwNSZhFETIoXkkCUebHM\n\
Ce4FUX6PhQKBgQCtTjXxzosX3s1MfZazbifVunlD/MEFxOEbpnrRtnEOOaunzn4p\n\
Y9PVhHRwU6Ch8HRZDcnkW+9V0BPhCtIIhWsL22JAB8GNgr7hG6txJuqw/NBLvHWb\n\
LOLU1ibeuRoVr7Xqogx+pMiaBOgyk+novVJnQrOmDfmUd4HVd7RRckzkAwKBgEdn\n\
Rh2kAvs0Q90GF7OD4Z5HpMbQmBy0Am1GVzKxAWHsWE+p8zGVJuVpW8WDHeceY++L\n\
YZ7fYJVuc2N9tFIxjYGUtKyGRsErG264E0zoynBBSQZwBLLVCGbj5X+w5mhVTfkz\n\
zpZuvTCz4ZOs8m41awpRK4iZgwDo3a9zdod+2GEhAoGAU3t4PSSkspOMsH+mgCtE\n\
uTGMiUSPbOZYbVXDONouhg8QeAHsivK64qYoyMaZS4djRwH8pubwIc0YegGo+Hg4\n\
xysis37wzAOZbJvDekhKDpolPIsjKUEVbzhgh8WCs7ry02fFum/cy1R3qL93CNVo\n\
hByFJA8Ta3aMOpsHQauz0x8=\n\
-----END PRIVATE KEY-----\n\
";
pub(super) const RSA_A_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAiiotlDi/NLaWSlaeptWu\n\
ak0btSnU2wzuvU8XYlyl43X/pj18S1+9kNlvrY2pz8gqkRAesz/+8FIFhBi9avu0\n\
Mtxkkl4/6AKl21nTgSvDK3b2oBOn0RwUG0hclIQCxp0HgN6Vsh2uNdjjf7AgTPPg\n\
PGHnxkX3XGOAsIQuQc/IkYmWnw7Ui7JN8O1QTKjwNCuOHlacOdXAdCQ36VrZLH9Z\n\
LZOi8oZdOPR2gKd8/x5SFVTwzyM851PEtTRP5WGLT6Od0chR3EPBVma7oCwB4kgB\n\
WbHIB74FhnsG07p21ezRnjOmlLF21l5ZZjRRVmxfM3PHtFtfzTxMnBt+2qPu3JWD\n\
UwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

pub(super) const RSA_B_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDGwWCvUBgd7Vmj\n\
WwUomEuQovbtKvbYaq0fF7FJQP42aAmPfYfZOpUNbvLu+P2/UtoXhnENVIspS/qe\n\
zgl8B/1a4D3AUr+aB/+wzGrnw7oXJPh3RihQzbBOCEcgwcyqTfBxEb3RI/1Aiz1x\n\
cJvBPvO1xq2QKEGFKZ7Xefztkj4BYG/O5r9TqR2ygnuZcW7LtA9pl7mjjq7oClbv\n\
60VjQIvu/QSrbyDqsvR0Rm8g/CQccleFoRzjY2hzNuMLyjn8z4G9CV4f4I4x6R0P\n\
RBinssY4CbmwuKDXIa4fbel3XSbNTdGBqyi8GD3LJRFClC6Zs+XnNpTXv8d+irQQ\n\
uWlNR5ZvAgMBAAECggEATiko6PiB6272A8AdGLg/ayszGNR/C190IliSXwDgl6u1\n\
KskOXdZkXEqH3YNsYktmOb8kgT4AleZrsfzLjQulThIGJrZD5AKGQlQ5LFhzu3tN\n\
/LXJz/D7hsxJkG+2GTkaN5TnBTJ2euXm7U//6HBlrdPqWFkEXyYdcZZm6VRL7wT4\n\
aMsfmAQoMMiG5OH3Aaq7Yf9mx0gdqwjRt+KBIKHjjjDsmPMycPr1z4Ti/HnWfKti\n\
e38rN1TK3/ZAVhWA8vtTCPleUepSXytbsEyus/B8kZfAcmxxlpjLNWGE2FAuQ2tM\n\
7n02xRYkPWt1QwUu/yszxK7h9BhezC0qm5PZbS8/uQKBgQDvaggoM/XOcaayn9HE\n\
7PfqbEBt+w1+ibfyrbn6KxYguogrfyeyIJ7z11ugQd1ZfOOm7j94ry0RU5MF+yDr\n\
NMoyCm6ckEGK76Z+yddgD3nyeaDeVRDiXahjf4aaHwU2KDrKVrm48J9eZ7vyjYTL\n\
18nrX4Jkw8soNKYAJvuTjPV6aQKBgQDUhkTkYcC6I4ObgeMM83uVglZFCn2NzqzG\n\
a4qtKb4i83Md+wcoLvCCNwHHPAGS4PpT93Zk+t+gp9N/47sQEa08ESS5NuSBr9/T\n\
StbpF3Por9buBUDoKIFsdHWCbro41RhZQHJezSMHHXHxlOCj/UlzcQZxMwmyQBrM\n\
6D34tJP/FwKBgEgM5fWLZZ9CbsN0+4FDO3zuJRm0IySAt74t8DlMfDVPTamhc8XU\n\
sWF631VEXSQQRMa5Dpr4RRzgxO9Y21hNo8gZgZ5Wf5MbekTP46RCJBYH6pTejt1B\n\
CGshNtXtHflldAPuw6fXqm6T02k0k9Fw2JCgRrKiheJMreR/1thZ5Ip5AoGBAIIl\n\
r67Ehkf3U7M5uZfGy9nlNXuWTwk2lev1E7mzpHK277pebiWXiUXU9cvS3YvbJrGh\n\
C+oPED/MRuM8zOOsT5BHV1vtV8ZrtAArBq075YmLlW2x3evOUmPedc/oizYemYie\n\
xOt1aIwE5jBxYZhLll2Ry8Yq4Tc9tqvhVYIm47MFAoGBAOYnuJORoQT8FLnqg0qM\n\
JPykxLp2UCseydK9NX+c3Zpz0AGf03KY6baWLPjt2XWd7Pr/nwZy+uxRmbbeqdca\n\
NDFzL0ElWgX6RDDh4TUl9iPIeoj4fmhYZTHpvEG9lXnO0A7lGZkQjWiuDIy8sJPp\n\
rJBB95PR54fPoyywuf6/VpGU\n\
-----END PRIVATE KEY-----\n\
";
pub(super) const RSA_B_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAxsFgr1AYHe1Zo1sFKJhL\n\
kKL27Sr22GqtHxexSUD+NmgJj32H2TqVDW7y7vj9v1LaF4ZxDVSLKUv6ns4JfAf9\n\
WuA9wFK/mgf/sMxq58O6FyT4d0YoUM2wTghHIMHMqk3wcRG90SP9QIs9cXCbwT7z\n\
tcatkChBhSme13n87ZI+AWBvzua/U6kdsoJ7mXFuy7QPaZe5o46u6ApW7+tFY0CL\n\
7v0Eq28g6rL0dEZvIPwkHHJXhaEc42NoczbjC8o5/M+BvQleH+COMekdD0QYp7LG\n\
OAm5sLig1yGuH23pd10mzU3RgasovBg9yyURQpQumbPl5zaU17/Hfoq0ELlpTUeW\n\
bwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

pub(super) const EC_P256_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgESLz/gNhUxBBSkKn\n\
05I8v9Jh8db3PCpi53H6DDvNsS2hRANCAAS79qa/VkEWDbWGIOD8CIMi3bjcP01O\n\
Cvdo7VzyBSSfnBZFrC+l28vqClZuKhZP5uURkaIfACPfbq03O+cIW1nh\n\
-----END PRIVATE KEY-----\n\
";
pub(super) const EC_P256_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEu/amv1ZBFg21hiDg/AiDIt243D9N\n\
Tgr3aO1c8gUkn5wWRawvpdvL6gpWbioWT+blEZGiHwAj326tNzvnCFtZ4Q==\n\
-----END PUBLIC KEY-----\n\
";

pub(super) const ED25519_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIJGE63wtbyXCL+5E2g53SuLKw0fyFTbs+sjgw1vNjSM/\n\
-----END PRIVATE KEY-----\n\
";
pub(super) const ED25519_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MCowBQYDK2VwAyEA9S1lU+QRrJG6r/Fm8HNIVK7tF3gk0RgxOf7pFHIb7iE=\n\
-----END PUBLIC KEY-----\n\
";
