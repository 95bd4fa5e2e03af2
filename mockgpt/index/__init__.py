"""The index wing: datasets in, one index file out, and the file read back.

Reading datasets (dataset), the one definition of a key (canonical), token counts (tokens), what the file
stores per key (records) and its byte layout (fileformat), writing it (writer) from the build pipeline
(build, behind ``python -m mockgpt.index``), reading it (reader), and the replay core that every API shares:
find, choose and cut recorded answers (replay). Nothing here knows HTTP or any wire format.
"""
